from walrelay.cli import main

main()
