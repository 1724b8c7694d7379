from bfncli.cli import main

main()
