"""Entry point of the frozen `tagger` binary (tagger.spec).

It lives outside the package on purpose: PyInstaller puts the entry script's folder on the import
path, and tagger/ holds modules (exiftool.py) that would shadow the libraries of the same name.
"""
import sys

from tagger.cli import main

if __name__ == "__main__":
    sys.exit(main())
