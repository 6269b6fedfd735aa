"""The miniature reproduction of the paper's claims on SynthRef: every run, cached, then one results page.

Rows (``ROWS``; arXiv 2407.07412 Tab. 1-4 in miniature):

* ``zero_shot`` / ``zero_shot_gt``: no training; SAM (or GT) masks ranked by the CLIP scorer (`ris_models.zero_shot`);
* ``beam`` / ``distinctive`` / ``full``: trained on pseudo labels of the SAM-mask store: beam-search captions only;
  + distinctive samples (unfiltered); + DoC filtering (the full method). One store, three selections
  (`pseudo_ris.evaluation.variants`), so only the labels differ;
* ``full_gt``: the full method on GT instance masks (``masks=gt``): caption quality without mask errors;
* ``full_vote``: the main job's labels: the same captions scored by the CLIP stand-in (``sam_clip`` store) and
  filtered with the main job's filter (head-noun vote, DoC > 1000, masks without a passing candidate dropped);
  ``full_vote_coca``: the vote on the CoCa-head scores at DoC > 10; ``full_gt_vote``: the main job's filter on GT masks;
* ``full_spatial``: the full method on a store whose expressions may carry location / size phrases (beyond the paper);
* ``human_100`` / ``human_10``: human labels, all / a 10 % image subset; ``mixed_10``: 10 % human + pseudo (full);
* initialisation ablations on ``synthref``: ``human_100_scratch`` / ``full_scratch`` (tiny CRIS without its CLIP
  stand-in) and ``human_100_pretrained`` / ``full_pretrained`` (tiny LAVT with its Swin stand-in); each runs only for
  the model whose default it flips.

Pseudo-label rows do not depend on the evaluation dataset (the labels come from the unlabelled pool): each is trained
once, its checkpoint selected on ``synthref`` val (the first dataset), and evaluated on every dataset. Human and
mixed rows are trained per dataset. Every run writes ``<out_dir>/runs/<model>/<row>/<dataset>/s<seed>/result.json``;
a rerun skips finished runs and resumes a killed training from its ``last.ckpt``; a result records its spec (the row's
definition and the plan's budgets and overrides, ``plan.run_spec``) and is refused once they differ. The page shows mean ± std over
seeds (std over n seeds with ddof 1; "-" for one seed).

The reproduction drives both generation (`pseudo_ris`) and training (`ris_models`), so it lives here and not in
`pseudo_ris`, which never imports `ris_models`. One module per job:

* `plan`: rows, columns, the resolved plan and its run order;
* `stages`: candidate stores, variant datasets, trainings and zero-shot scoring of one run;
* `execute`: running a plan (cached results, a lock per run so several processes share a plan);
* `statistics`: tables (mean ± std) and claim verdicts;
* `figures`: DoC histograms, label gallery, learning curves;
* `page`: the Markdown page and `reproduce`, the entry point of ``tools/reproduce.py``.
"""

from ris_models.reproduction.execute import RunRecord, execute, run_lock
from ris_models.reproduction.page import reproduce, write_results_page
from ris_models.reproduction.plan import COLUMNS, ROWS, Plan, ReproduceConfigError, Row, planned_runs, run_dir
from ris_models.reproduction.statistics import claim_verdict, claims_section, mean_std, results_table

__all__ = ["COLUMNS", "ROWS", "Plan", "ReproduceConfigError", "Row", "RunRecord", "claim_verdict", "claims_section",
           "execute", "mean_std", "planned_runs", "reproduce", "results_table", "run_dir", "run_lock",
           "write_results_page"]
