"""Each chapter's experiments, one module a chapter: the loops that run attacks and defenses over
a chapter's victims and turn the results into its tables, figures and measured claims. The
notebooks call them one experiment a cell; the algorithms themselves live in `attacks/` and
`defenses/`."""
