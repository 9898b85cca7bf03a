//! Both ends of the migration (ARCHITECTURE.md, "Clock alignment and the
//! three sub-stages"): the source trace indexed ([`source`]), the return
//! path matched across the two ([`stream`]), the clocks aligned ([`clock`]),
//! each requested page matched to the source's send of it and each
//! requested fault's network stage split three ways ([`merge`]).

pub mod clock;
pub mod merge;
pub mod source;
pub mod stream;
