"""`python -m pipeline.report`: the report's command line (pipeline.report.cli)."""

from pipeline.report.cli import main

if __name__ == "__main__":
    main()
