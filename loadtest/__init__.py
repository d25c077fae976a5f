"""Load generation and request mixes drawn from a published bundle's real users, products and queries."""
