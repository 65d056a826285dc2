from vrrestore.cli import main

main()
