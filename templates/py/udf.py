# {{name}}: weir UDFs in Python (monty inside weir's sandbox).
# See docs/udf-guide.md. Each `# @udf` line declares a function SQL may
# call, with SQL types. A NULL argument gives NULL without a call; return
# None for NULL; an exception fails that row with its message and line.
# There is no clock, no files, no network, and `random` only in functions
# declared VOLATILE.

# @udf {{name}}(x BIGINT) RETURNS BIGINT
def {{name}}(x):
    return x * 2 + 1


SMALL_WORDS = {"a", "of", "the"}


# @udf {{name}}_title(s VARCHAR) RETURNS VARCHAR
def {{name}}_title(s):
    words = s.split(" ")
    return " ".join(w if w in SMALL_WORDS else w[:1].upper() + w[1:] for w in words)


# @udf {{name}}_ratio(a DOUBLE, b DOUBLE) RETURNS DOUBLE
def {{name}}_ratio(a, b):
    if b == 0:
        raise ZeroDivisionError("cannot divide by zero")
    return a / b
