"""Each chapter's experiments, one module a chapter, named as its notebook (`book.planned_jobs`
finds a chapter's `results` by that name; so `experiments/attacks.py` shares its name with the
`attacks/` package, and `experiments/none.py` with `defenses/none.py`, and the notebooks import
it as `ex`). A module's `results(ch, ...)` runs the chapter's attacks and defenses over its
victims, its jobs found by calling it (`Chapter.compute`); its other functions turn what that
returns into the chapter's tables, figures and measured claims. The algorithms themselves live
in `attacks/` and `defenses/`."""
