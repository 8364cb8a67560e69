from seqvi.cli import main

main()
