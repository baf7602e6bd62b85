"""What the commands do, one function each: library calls over recipes, inference and evaluation.

Commands parse flags and call one of these; these import no command.
"""
