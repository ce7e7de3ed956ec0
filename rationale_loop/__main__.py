from rationale_loop.cli import main

main()
