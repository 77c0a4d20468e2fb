"""Tool `annotate`: rating tasks for human raters (Label Studio import); see __main__.py."""
