"""pacsbox — a complete PACS in one Python package.

The identity constants below are written into the File Meta Information of every Part-10 file
we create (PS3.10 §7.1) and sent in A-ASSOCIATE PDUs (PS3.7 Annex D.3.3.2).
"""

__version__ = "0.1.0"

#: Implementation Class UID (0002,0012), a UUID-derived UID under the 2.25 root (PS3.5 §B.2).
IMPLEMENTATION_CLASS_UID = "2.25.162848890842338036133213311978566915167"
#: Implementation Version Name (0002,0013), at most 16 characters.
IMPLEMENTATION_VERSION_NAME = f"PACSBOX_{__version__}"
