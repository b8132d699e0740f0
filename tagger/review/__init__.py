"""`tagger review`: a local page to accept or reject the tagger's suggestions (DESIGN.md §10)."""
