"""vlpipe: data_prep."""
