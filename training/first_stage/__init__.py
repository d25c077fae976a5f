"""First-stage retrievers (M_ID in the paper): HEM, ZAM, BM25 and popularity."""
