"""Tools for compliance reviewers: strict checks, the ruleset as a document, the impact of a change, and the
explanation of any past decision. Pure domain code here; each tool's command line sits beside it."""
