"""The API's routes, one router per resource; each handler checks the caller's role and calls one
function of the package that owns the data (no SQL here)."""
