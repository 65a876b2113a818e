"""``sift demo``: prove the loop learns (part A: uncertainty vs random labels; part B: the real services)."""
