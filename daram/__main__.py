from daram.cli import main

main()
