"""lxmert_fast: LXMERT (Tan & Bansal, 2019) as a performance-engineered training system."""
__version__ = "0.1.0"
