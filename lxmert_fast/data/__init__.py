"""Data for lxmert_fast: the embedded synthetic world (world.py), WordPiece vocab resolution
(tokenization.py), LXMERT pretraining examples with the original masking (pretrain.py) and the
QA answer table (answers.py). Submodules are imported explicitly; this package imports nothing."""
