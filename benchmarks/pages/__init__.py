"""The sections of docs/benchmarks.md, one module per benchmark script and named as it
(``pages/gpipe.py`` renders ``results/gpipe.json``): its row of the summary table
(``gpipe_row``, or ``render_ingest`` where the row is all it has) and its section
(``render_gpipe``), with their helpers; ``_format`` holds the formatting they share.
``benchmarks/report.py`` composes the page from them. Standard library only."""
