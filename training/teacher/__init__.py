"""The HMPPS teacher: a (multimodal) LLM that answers yes/no per candidate."""
