"""Views: what turns a chapter's measures into its page (tables, verdicts against the papers'
numbers, intervals over seeds, figures' captions and glued values, the scorecard). A view reads
plain data only: it imports no torch and touches no model or dataset
(tests/test_views.py holds every module here to that), so a change to how a page reads costs a
re-render from the committed measures, never a rerun."""
