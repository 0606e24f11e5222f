//! Per-force facts the generator scales by: population (thousands, about 2021) and a
//! settlement class. Approximate public figures; exact values do not matter, their
//! proportions do.

/// Settlement class of a force area, driving density, deprivation and crime rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Large conurbations.
    Metropolitan,
    /// Mixed towns and countryside.
    Mixed,
    /// Mostly rural.
    Rural,
}

/// Population in thousands and settlement class, by force slug.
pub const FORCES: [(&str, u32, Settlement); 43] = {
    use Settlement::*;
    [
        ("metropolitan", 8_800, Metropolitan),
        ("city-of-london", 10, Metropolitan),
        ("cumbria", 500, Rural),
        ("lancashire", 1_530, Mixed),
        ("merseyside", 1_430, Metropolitan),
        ("greater-manchester", 2_870, Metropolitan),
        ("cheshire", 1_070, Mixed),
        ("northumbria", 1_470, Metropolitan),
        ("durham", 650, Mixed),
        ("cleveland", 570, Mixed),
        ("north-yorkshire", 830, Rural),
        ("west-yorkshire", 2_350, Metropolitan),
        ("south-yorkshire", 1_420, Metropolitan),
        ("humberside", 940, Mixed),
        ("west-midlands", 2_940, Metropolitan),
        ("staffordshire", 1_140, Mixed),
        ("west-mercia", 1_320, Rural),
        ("warwickshire", 600, Mixed),
        ("derbyshire", 1_060, Mixed),
        ("nottinghamshire", 1_170, Mixed),
        ("lincolnshire", 770, Rural),
        ("leicestershire", 1_130, Mixed),
        ("northamptonshire", 790, Mixed),
        ("cambridgeshire", 900, Mixed),
        ("norfolk", 920, Rural),
        ("suffolk", 760, Rural),
        ("bedfordshire", 690, Mixed),
        ("hertfordshire", 1_200, Mixed),
        ("essex", 1_850, Mixed),
        ("thames-valley", 2_440, Mixed),
        ("hampshire", 2_030, Mixed),
        ("surrey", 1_200, Mixed),
        ("kent", 1_870, Mixed),
        ("sussex", 1_720, Mixed),
        ("devon-and-cornwall", 1_800, Rural),
        ("avon-and-somerset", 1_730, Mixed),
        ("gloucestershire", 650, Rural),
        ("wiltshire", 730, Rural),
        ("dorset", 780, Rural),
        ("north-wales", 690, Rural),
        ("gwent", 600, Mixed),
        ("south-wales", 1_340, Mixed),
        ("dyfed-powys", 520, Rural),
    ]
};

/// Population (thousands) and settlement of a force.
pub fn profile(slug: &str) -> (u32, Settlement) {
    FORCES
        .iter()
        .find(|(s, _, _)| *s == slug)
        .map_or((1_000, Settlement::Mixed), |(_, p, s)| (*p, *s))
}

/// Total population of all forces, thousands.
pub fn total_population() -> u32 {
    FORCES.iter().map(|(_, p, _)| p).sum()
}
