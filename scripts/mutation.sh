#!/usr/bin/env bash
# `make mutation`: mutation testing of the code where a silent bug corrupts results (slow, about
# an hour on 2 cores; not part of `make test`). mutmut copies the library into mutants/, changes
# one thing at a time (a comparison, a constant, an argument) and runs the fast tests that call
# the changed function: a mutant that no test notices marks a test gap, or an equivalent change
# (listed with its reason in scripts/mutation_equivalent.txt). The summary per module is printed
# and written to mutants/summary.md. Pass globs to narrow it: scripts/mutation.sh 'pipeline.losses*'
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q --disable-pip-version-check mutmut==3.8.1

TARGETS=(
  'data_prep.align.*'                                   # words and sentences -> clips
  'data_prep.inputs.x_quick_fingerprint*'               # dedup: quick key ...
  'data_prep.inputs.x_find_duplicates*'                 # ... confirmed by the full hash
  'pipeline.losses.*'                                   # NCE, ranking, soft targets
  'pipeline.models.base.x_mask_tokens*'                 # BERT masking 15 % / 80-10-10
  'pipeline.hkmeans.x_squared_distances*'               # k-means assignment
  'pipeline.hkmeans.x__nearest*'
  'pipeline.hkmeans.*HierarchicalKMeans*assign*'
  'pipeline.hkmeans.*HierarchicalKMeans*_index*'
  'pipeline.visual_words.x_nearest_words*'
  'pipeline.segments.x_build_segments*'                 # segment stream, ranks, resume
  'pipeline.segments.*SegmentStream*epoch_segments*'
  'pipeline.segments.*SegmentStream*__iter__*'
  'pipeline.segments.x_loader*'
  'pipeline.s3d_extract.*S3DFeatureExtractor*__init__*'  # S3D input normalisation
  'pipeline.s3d_extract.*S3DFeatureExtractor*preprocess*'
  'finetune.zeroshot.x_label_ids*'                      # zero-shot protocol
  'finetune.zeroshot.x_make_batch*'
  'finetune.zeroshot.x_topk_metrics*'
  'finetune.zeroshot.x_mask_scores*'
  'finetune.zeroshot.x_alignment_scores*'
  'finetune.zeroshot.x_evaluate_zeroshot*'
  'finetune.metrics.*'                                  # the fine-tuning metrics
)
[ $# -gt 0 ] && TARGETS=("$@")
rm -rf mutants  # results are per source version: start clean
nice -n 5 .venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" "${TARGETS[@]}" \
  > mutants.log 2>&1 || { tail -c 3000 mutants.log; exit 1; }
.venv/bin/python scripts/mutation_report.py "${TARGETS[@]}" | tee mutants/summary.md
