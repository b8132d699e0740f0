"""HP-DVAL training (torch, open_clip): imported only by `tagger train` and `export/`, never by `tagger/`."""
