"""The model as sbert knows it before running it: where it is, what its directory says, and its tokens."""
