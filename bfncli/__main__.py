import signal

from bfncli.errors import raise_interrupted

signal.signal(signal.SIGINT, raise_interrupted)  # Ctrl-C while the command-line libraries load is said in one line too

from bfncli.cli import main  # noqa: E402

main()
