"""Sans-I/O connection sessions: fed bytes, packets and the time; they
answer with actions (see :mod:`condure.session.actions`)."""
