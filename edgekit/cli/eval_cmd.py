"""placeholder until wired"""


def register(app):
    pass
