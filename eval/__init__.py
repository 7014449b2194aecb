"""Evaluation of distilled students: answer grading, benchmarks, metrics, the runner and the
paper-style comparison.

    python -m eval.prepare                       # benchmark files into data/ (or $OPSD_DATA_DIR)
    python -m eval.run --model DIR --bench math500,aime24,aime25 --n 16 --out results.json
    python -m eval.compare BASE.json VARIANT.json --table 5 --out report.md --plot fig.png
    python -m eval.grader_agreement              # grader vs the benchmarks' own gold solutions
    python -m eval.grading_throughput            # answers graded per second

Modules (each imports only what it needs; nothing here imports torch or transformers eagerly):

- ``grading``      ``is_correct(response, gold)`` on top of HF math-verify, with a hard per-call
                   timeout (a worker process that is killed when it overruns)
- ``benchmarks``   registry and loaders (MATH-500, AIME 2024/2025, DAPO validation, toy), data
                   root, benchmark version ids
- ``templates``    prompt templates (boxed, plain, dapo, raw)
- ``prepare``      ``python -m eval.prepare``: copy or download benchmark files; DAPO dedup + split
- ``metrics``      mean@k, unbiased pass@k, maj@k with standard errors; paired differences
- ``results``      the results-file format, config hash, atomic writes
- ``run``          ``python -m eval.run``: generate, grade, write (resumable)
- ``compare``      ``python -m eval.compare``: paper-layout tables and the ratio plot
- ``paper_tables`` the TIP paper's Tables 3-8, transcribed with their provenance
- ``grader_agreement`` / ``grading_throughput``: checks of the grader on the shared data
"""
