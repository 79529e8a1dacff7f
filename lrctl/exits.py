"""Exit codes of the ``lrctl`` command (cli and app decide them; this is their one list).

======  ==========================================================================================
code    meaning
======  ==========================================================================================
0       done (also when the output pipe closed: ``lrctl ... | head``; the run is saved)
1       an error; the message is on stderr
2       bad usage (an option or a --plan that cannot be)
130     a --plan interrupted by Ctrl-C (saved; ``lrctl resume`` finishes it)
143     SIGTERM, 129 SIGHUP: saved at the next batch boundary (``lrctl resume`` finishes the work)
======  ==========================================================================================
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
