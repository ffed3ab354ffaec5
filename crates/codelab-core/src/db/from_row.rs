//! [`from_row!`](crate::from_row): a store's record read from a row of either database.

/// Builds the record `$record` from `$row` (an `impl Cells`, see [`crate::db::cells`]): each
/// `field: reader` reads the column named as the field with that [`Cells`] reader, each
/// `field = expression` takes the expression. Fields are read in the order written; a cell
/// that cannot be read returns early through `?` (so the caller's error needs a
/// `From<CellError>`, as [`crate::db::StoreError`] has).
///
/// [`Cells`]: crate::db::cells::Cells
#[macro_export]
macro_rules! from_row {
    (@read $row:ident $record:ident { $($done:tt)* }) => {
        $record { $($done)* }
    };
    (@read $row:ident $record:ident { $($done:tt)* }
        $field:ident = $value:expr $(, $($rest:tt)*)?) => {
        $crate::from_row!(@read $row $record { $($done)* $field: $value, } $($($rest)*)?)
    };
    (@read $row:ident $record:ident { $($done:tt)* }
        $field:ident: $read:ident $(, $($rest:tt)*)?) => {
        $crate::from_row!(@read $row $record {
            $($done)* $field: $crate::db::cells::Cells::$read($row, stringify!($field))?,
        } $($($rest)*)?)
    };
    ($row:ident => $record:ident { $($fields:tt)* }) => {
        $crate::from_row!(@read $row $record {} $($fields)*)
    };
}
