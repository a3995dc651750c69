"""Campaign analytics — pure: the report's statistics, the chain report over
central's event exports (streamed, bounded memory) and the offline
evaluation of a scores file.  No clock, no sockets, no SQLite; files only
where a command hands them in (exports to read, a temporary directory to
spill into).  May import ``store_config`` (promotion values); nothing else
of the project.
"""
