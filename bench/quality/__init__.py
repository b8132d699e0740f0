"""Quality benchmark: HP-DVAL against its baselines on a generated long-tailed tagging task (issue 8)."""
