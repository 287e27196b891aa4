"""Proposers: read a parent and its side information, return a patch (or why there is none)."""
