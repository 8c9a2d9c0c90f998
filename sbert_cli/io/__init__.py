"""Files in and out: the readers of every input, the writers and sinks of every output, a directory's manifest and lock."""
