"""vlpipe: finetune."""
