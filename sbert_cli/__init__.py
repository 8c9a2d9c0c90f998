"""sbert: Chinese sentence embeddings in bulk, from the command line."""

__version__ = "0.1.0"
