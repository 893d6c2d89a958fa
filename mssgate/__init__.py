"""mssgate: a filtering SMTP relay that keeps health data inside the MSSanté trust space."""

__version__ = "0.1.0"
