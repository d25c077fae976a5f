"""Perspective-guided description summarization (HMPPS paper Sec. 4.2, Table 5)."""
