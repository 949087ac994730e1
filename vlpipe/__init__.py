"""vlpipe's face: the `vlpipe` command and the demo, the only code that imports every stage.

The house reads top to bottom: `vlpipe` (this package) -> the stages `data_prep`, `pretrain`,
`finetune` -> the library `pipeline`. Stages never import each other; they meet through files
(shards, model directories) and the library.
"""
