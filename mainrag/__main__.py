from mainrag.cli import main

main()
