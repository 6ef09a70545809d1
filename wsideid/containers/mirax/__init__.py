"""MIRAX: NAME.mrxs, and NAME/ with Slidedat.ini, Index.dat and the data files."""
