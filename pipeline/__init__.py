"""vlpipe: pipeline."""
