"""``python -m edgemvp`` is the same as the ``edgemvp`` command."""
from edgemvp.cli import main

main()
