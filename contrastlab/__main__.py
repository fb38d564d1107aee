from contrastlab.app.cli import main

main()
