//! Sans-IO codecs: length-prefixed, header+body (`files` frames) and lines.
